"""Units of size, in bytes, for every module that needs one."""

#: A kibibyte.
KIB = 1024
#: A mebibyte.
MIB = 1024 * KIB
#: A gibibyte.
GIB = 1024 * MIB
