"""reinlm.data"""
