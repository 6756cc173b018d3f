/* libbar.so.2: a leaf library. */
int bar(void) { return 41; }
