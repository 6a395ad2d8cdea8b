"""
meshproxy's trial test suite.
"""
