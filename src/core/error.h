// One exception family for the whole library. Every error carries where it was raised
// (file:line) and whether every rank raised it together ("collective"): a collective error
// lets each rank exit cleanly; a local one must abort the job so peers do not hang.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace trustep {

struct Origin {
  const char* file = "";
  int line = 0;
};

class Error : public std::runtime_error {
 public:
  Error(const std::string& message, Origin origin, bool collective = false)
      : std::runtime_error(message), origin_(origin), collective_(collective) {}
  const Origin& origin() const { return origin_; }
  // True when every rank of the job is known to raise the same error.
  bool collective() const { return collective_; }

 private:
  Origin origin_;
  bool collective_;
};

// A bad command-line option or config value (exit code 2).
class OptionError : public Error {
 public:
  using Error::Error;
};

// A communication failure or a disagreement between ranks.
class CommError : public Error {
 public:
  using Error::Error;
};

// A tensor crossing a named boundary does not match the boundary's dtype contract.
class ContractViolation : public Error {
 public:
  ContractViolation(const std::string& message, Origin origin, bool collective, std::string boundary,
                    std::string expected, std::string actual, int rank)
      : Error(message, origin, collective),
        boundary_(std::move(boundary)),
        expected_(std::move(expected)),
        actual_(std::move(actual)),
        rank_(rank) {}
  const std::string& boundary() const { return boundary_; }
  const std::string& expected() const { return expected_; }
  const std::string& actual() const { return actual_; }
  // The rank whose tensor broke the contract (-1 when unknown).
  int rank() const { return rank_; }

 private:
  std::string boundary_, expected_, actual_;
  int rank_;
};

}  // namespace trustep

#define TRUSTEP_ORIGIN (::trustep::Origin{__FILE__, __LINE__})

// TRUSTEP_CHECK(cond, "fmt {}", args...): throw trustep::Error naming what failed.
#define TRUSTEP_CHECK_AS(ErrorType, cond, ...)                                   \
  do {                                                                          \
    if (!(cond)) throw ErrorType(::fmt::format(__VA_ARGS__), TRUSTEP_ORIGIN);    \
  } while (false)
#define TRUSTEP_CHECK(cond, ...) TRUSTEP_CHECK_AS(::trustep::Error, cond, __VA_ARGS__)
