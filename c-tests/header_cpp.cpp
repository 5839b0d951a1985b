// The public header compiles as C++17 and links with C linkage.
#include "mappedram.h"

#include <cstring>
#include <string>
#include <type_traits>

static_assert(std::is_standard_layout<mr_ramblock_info>::value, "C layout");
static_assert(sizeof(mr_ramblock_info::idstr) == 256, "idstr[256]");
static_assert(MR_EINCOMPLETE == 117, "EUCLEAN");

int main()
{
    std::string v = mr_version();
    mr_channel *ch = nullptr;
    int r = mr_channel_open(nullptr, MR_OPEN_READ, &ch);
    if (r >= 0 || ch != nullptr)
        return 1;
    if (std::strstr(mr_last_error(), "path") == nullptr)
        return 2;
    return v.empty() ? 3 : 0;
}
