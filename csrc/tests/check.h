// The CHECK macro of irnet's C++ tests: counts checks and failures and prints the first
// few failures of each section (g_section_start: the failure count where the current
// section began, set by section(); g_messages_per_section: how many of its failures are
// printed).
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

// Runs one section and prints its number of failed checks (all sections always run, so a
// broken piece shows in every section that depends on it).
template <class Section>
inline void section(const char* name, Section&& run) {
  const int before = g_section_start = g_failures;
  run();
  std::printf("%-52s %s (%d failed checks)\n", name, g_failures == before ? "ok" : "FAILED", g_failures - before);
}
