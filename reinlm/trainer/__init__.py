"""reinlm.trainer"""
