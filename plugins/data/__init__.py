"""slimkit.plugins.data"""
