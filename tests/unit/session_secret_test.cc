// The session secret's wire form: what the daemon parses from the header and the client sends.
#include "common/session_secret.h"

#include <gtest/gtest.h>

#include <string>

namespace epd {
namespace {

TEST(SessionSecretTest, FormatIsSixteenLowercaseHexDigitsAndParsesBack) {
  for (SessionSecret secret : {SessionSecret{0}, SessionSecret{1}, SessionSecret{0xabcdef},
                               SessionSecret{0xfedcba9876543210ULL}, ~SessionSecret{0}}) {
    const std::string text = FormatSessionSecret(secret);
    EXPECT_EQ(text.size(), kSessionSecretDigits) << text;
    EXPECT_EQ(text.find_first_not_of("0123456789abcdef"), std::string::npos) << text;
    EXPECT_EQ(ParseSessionSecret(text), secret) << text;
  }
  EXPECT_EQ(FormatSessionSecret(0x1f), "000000000000001f");
  EXPECT_EQ(ParseSessionSecret("FEDCBA9876543210"), SessionSecret{0xfedcba9876543210ULL});
}

TEST(SessionSecretTest, AnythingButSixteenHexDigitsIsRefused) {
  for (const char* text :
       {"", "0", "123456789abcdef", "0123456789abcdef0", "0x23456789abcdef", "0123456789abcdeg",
        " 123456789abcdef", "0123456789abcde ", "-123456789abcdef", "+123456789abcdef"}) {
    EXPECT_FALSE(ParseSessionSecret(text).has_value()) << "'" << text << "'";
  }
  // A NUL inside is a character like any other: refused, not cut short.
  EXPECT_FALSE(ParseSessionSecret(std::string("01234567\0"
                                              "9abcdef",
                                              16))
                   .has_value());
}

TEST(SessionSecretTest, EqualOnlyWhenEveryBitIs) {
  const SessionSecret secret = 0x8000000000000001ULL;
  EXPECT_TRUE(SessionSecretsEqual(secret, secret));
  for (int bit = 0; bit < 64; ++bit) {
    EXPECT_FALSE(SessionSecretsEqual(secret, secret ^ (uint64_t{1} << bit))) << "bit " << bit;
  }
  EXPECT_FALSE(SessionSecretsEqual(0, ~SessionSecret{0}));
}

}  // namespace
}  // namespace epd
