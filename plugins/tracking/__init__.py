"""slimkit.plugins.tracking"""
