"""reinlm.rewards"""
