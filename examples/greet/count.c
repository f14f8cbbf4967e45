#include <ctype.h>
#include "greet.h"

int count_letters(const char *text)
{
    int n = 0;
    for (; *text; text++)
        n += isalpha((unsigned char)*text) != 0;
    return n;
}
