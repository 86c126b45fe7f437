// The CHECK macro of irnet's C++ tests: counts checks and failures and prints the first
// few failures of each section (g_section_start: the failure count where the current
// section began; g_messages_per_section: how many of its failures are printed).
#pragma once

#include <cstdio>

inline int g_checks = 0;
inline int g_failures = 0;
inline int g_section_start = 0;
inline int g_messages_per_section = 20;

#define CHECK(cond, ...)                                                \
  do {                                                                  \
    ++g_checks;                                                         \
    if (!(cond)) {                                                      \
      ++g_failures;                                                     \
      if (g_failures - g_section_start <= g_messages_per_section) {     \
        std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);     \
        std::printf(__VA_ARGS__);                                       \
        std::printf("\n");                                              \
      }                                                                 \
    }                                                                   \
  } while (0)
