#ifndef GREET_H
#define GREET_H
const char *greeting(void);
int count_letters(const char *text);
#endif
