"""reinlm.critic"""
