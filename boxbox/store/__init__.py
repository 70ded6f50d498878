"""boxbox.store"""
