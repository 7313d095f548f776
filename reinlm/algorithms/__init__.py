"""reinlm.algorithms"""
