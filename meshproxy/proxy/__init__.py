"""
Network filters: the L4 relay and the HTTP/1 proxy.
"""
