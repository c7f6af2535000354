"""agents/reflection"""
