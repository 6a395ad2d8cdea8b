"""
Upstream clusters: hosts, load balancers, connections.
"""
