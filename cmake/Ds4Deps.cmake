# Finds every external library ds4 links. All of them come from Debian packages installed by
# scripts/install-deps.sh; a missing one is a configure error naming the package.
find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)

function(ds4_require_pkg var module debpkg)
    pkg_check_modules(${var} QUIET IMPORTED_TARGET ${module})
    if(NOT ${var}_FOUND)
        message(FATAL_ERROR "ds4: pkg-config module '${module}' not found; "
                            "install Debian package ${debpkg} (scripts/install-deps.sh)")
    endif()
endfunction()

ds4_require_pkg(JANSSON jansson libjansson-dev)
ds4_require_pkg(UV libuv libuv1-dev)
ds4_require_pkg(UCX ucx libucx-dev)
ds4_require_pkg(GRPC grpc libgrpc-dev)
ds4_require_pkg(PROTOBUFC libprotobuf-c libprotobuf-c-dev)
ds4_require_pkg(PCRE2 libpcre2-8 libpcre2-dev)
ds4_require_pkg(OPENBLAS openblas libopenblas-dev)

find_program(DS4_PROTOC_C protoc-c)
if(NOT DS4_PROTOC_C)
    message(FATAL_ERROR "ds4: protoc-c not found; install protobuf-c-compiler")
endif()
find_library(DS4_LIBM m)
