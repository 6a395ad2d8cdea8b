"""
Route tables and matching (pure).
"""
