"""
The admin endpoint: a twisted.web resource tree.
"""
