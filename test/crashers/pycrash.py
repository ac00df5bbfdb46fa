# pycrash: a Python program whose C extension (ctypes) reads a null pointer.
import ctypes


def read_name(p):
    return ctypes.string_at(p)


def main():
    read_name(0)


main()
