// libvictim: a tiny shared library the victim crasher maps, for the swapped-library test.
int victim_value(int x) { return x * 3 + 1; }
