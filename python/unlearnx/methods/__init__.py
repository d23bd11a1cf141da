"""unlearnx.methods"""
