"""slimkit.plugins.torch"""
