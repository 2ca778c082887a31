"""slimkit.plugins"""
