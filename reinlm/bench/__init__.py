"""reinlm.bench"""
