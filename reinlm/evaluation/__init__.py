"""reinlm.evaluation"""
