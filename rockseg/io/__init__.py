"""Reading and writing volumes: one module per format family, the store conventions and intensity statistics.

Nothing is re-exported here, so that importing one module (``rockseg.io.stores``) does not load every reader.
"""
