"""reinlm.latent"""
