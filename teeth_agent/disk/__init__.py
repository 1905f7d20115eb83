"""Block devices: sizes and signatures (:mod:`.blockdev`), the image
writer (:mod:`.writer`) and partition tables (:mod:`.partitions`).
"""
