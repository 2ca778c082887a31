"""slimkit.pipelines"""
