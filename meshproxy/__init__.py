"""
meshproxy: a protocol-multiplexing proxy appliance on Twisted.
"""
