"""boxbox.raidfile"""
