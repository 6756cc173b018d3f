/* Test executable for tests/test_elfdeps.py: calls into libfoo so DT_NEEDED keeps it. */
int foo(void);

int main(void) { return foo() == 42 ? 0 : 1; }
