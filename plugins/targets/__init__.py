"""slimkit.plugins.targets"""
