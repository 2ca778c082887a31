"""slimkit.plugins.reporting"""
