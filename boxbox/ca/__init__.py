"""boxbox.ca"""
