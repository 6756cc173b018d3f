/* libfoo.so.1: needs libbar.so.2, found through the search path of whoever loads libfoo. */
int bar(void);

int foo(void) { return bar() + 1; }
