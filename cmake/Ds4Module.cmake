# Helpers shared by every directory: warning flags for our code, sanitizers, one library per
# module, tests with labels, and directory globbing so modules can be added without touching
# their parents.

set(DS4_WARN_FLAGS -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-unused-parameter)
set(DS4_SAN_FLAGS)
if(DS4_SANITIZE)
    set(DS4_SAN_FLAGS -fsanitize=address,undefined -fno-sanitize-recover=undefined
                      -fno-omit-frame-pointer)
endif()

# Applies ds4's compile options to one target of our own code.
function(ds4_target_flags target)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:C>:${DS4_WARN_FLAGS}>)
    target_compile_definitions(${target} PRIVATE _GNU_SOURCE)
    if(DS4_SANITIZE)
        target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:C>:${DS4_SAN_FLAGS}>)
        target_link_options(${target} PRIVATE ${DS4_SAN_FLAGS})
    endif()
endfunction()

# ds4_add_library(name SOURCES ... [PUBLIC_LIBS ...] [PRIVATE_LIBS ...])
function(ds4_add_library name)
    cmake_parse_arguments(A "" "" "SOURCES;PUBLIC_LIBS;PRIVATE_LIBS" ${ARGN})
    add_library(${name} STATIC ${A_SOURCES})
    ds4_target_flags(${name})
    target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR}/common/include
                                              ${PROJECT_SOURCE_DIR}/kernels/include)
    target_link_libraries(${name} PUBLIC ${A_PUBLIC_LIBS} PRIVATE ${A_PRIVATE_LIBS})
endfunction()

# ds4_add_executable(name SOURCES ... LIBS ...)
function(ds4_add_executable name)
    cmake_parse_arguments(A "" "" "SOURCES;LIBS" ${ARGN})
    add_executable(${name} ${A_SOURCES})
    ds4_target_flags(${name})
    target_link_libraries(${name} PRIVATE ${A_LIBS})
endfunction()

# ds4_add_test(name SOURCES ... LIBS ... LABELS ... [ARGS ...] [TIMEOUT s])
# Labels: unit ops model integration gpu slow. A test exits 77 to report "skipped" (e.g. no GPU).
# Tests run with the fixtures directory as DS4_FIXTURES and the source root as DS4_SOURCE_DIR.
function(ds4_add_test name)
    cmake_parse_arguments(A "" "TIMEOUT" "SOURCES;LIBS;LABELS;ARGS" ${ARGN})
    add_executable(${name} ${A_SOURCES})
    ds4_target_flags(${name})
    target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/tests)
    target_link_libraries(${name} PRIVATE ${A_LIBS})
    add_test(NAME ${name} COMMAND ${name} ${A_ARGS})
    if(NOT A_TIMEOUT)
        set(A_TIMEOUT 300)
    endif()
    set_tests_properties(${name} PROPERTIES
        LABELS "${A_LABELS}"
        TIMEOUT ${A_TIMEOUT}
        SKIP_RETURN_CODE 77
        ENVIRONMENT "DS4_FIXTURES=${PROJECT_SOURCE_DIR}/tests/fixtures;DS4_SOURCE_DIR=${PROJECT_SOURCE_DIR};DS4_BINARY_DIR=${PROJECT_BINARY_DIR};ASAN_OPTIONS=detect_leaks=1:abort_on_error=1;UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1")
endfunction()

# Adds every immediate subdirectory of `dir` that holds a CMakeLists.txt (sorted, so the
# order is stable). Lets a module land without editing its parent's list.
function(ds4_add_subdirs dir)
    set(base ${CMAKE_CURRENT_SOURCE_DIR}/${dir})
    if(EXISTS ${base}/CMakeLists.txt)
        add_subdirectory(${dir})
        return()
    endif()
    file(GLOB children LIST_DIRECTORIES true RELATIVE ${base} ${base}/*)
    list(SORT children)
    foreach(child ${children})
        if(IS_DIRECTORY ${base}/${child} AND EXISTS ${base}/${child}/CMakeLists.txt)
            add_subdirectory(${dir}/${child})
        endif()
    endforeach()
endfunction()

# Adds every immediate subdirectory of the current source directory that has a CMakeLists.txt.
function(ds4_add_children)
    file(GLOB children LIST_DIRECTORIES true RELATIVE ${CMAKE_CURRENT_SOURCE_DIR}
         ${CMAKE_CURRENT_SOURCE_DIR}/*)
    list(SORT children)
    foreach(child ${children})
        if(IS_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/${child}
           AND EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${child}/CMakeLists.txt)
            add_subdirectory(${child})
        endif()
    endforeach()
endfunction()
