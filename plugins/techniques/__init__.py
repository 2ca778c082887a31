"""slimkit.plugins.techniques"""
