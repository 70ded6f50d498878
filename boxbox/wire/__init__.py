"""boxbox.wire"""
