"""models.maskrcnn"""
