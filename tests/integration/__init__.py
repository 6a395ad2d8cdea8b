"""
Integration tests: real processes, sockets and clients on 127.0.0.1.
"""
