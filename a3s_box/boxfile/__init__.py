"""boxfile"""
