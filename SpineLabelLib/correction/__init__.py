"""correction"""
