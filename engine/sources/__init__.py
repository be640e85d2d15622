"""Where inputs come from: image collections and decoding, the demo world, description banks,
and the reference data published with the paper.
"""
