# FindNCCL: NCCL's library and header, searched next to the CUDA toolkit and in the system's
# multiarch folders (Debian's libnccl-dev). Defines NCCL_FOUND and the imported target
# NCCL::nccl. The one place the project looks for NCCL.
find_library(NCCL_LIBRARY nccl
  HINTS ${CUDAToolkit_LIBRARY_ROOT}/lib ${CUDAToolkit_LIBRARY_DIR} /usr/local/cuda/lib
        /usr/local/cuda/lib64 /usr/lib/x86_64-linux-gnu)
find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(NCCL REQUIRED_VARS NCCL_LIBRARY NCCL_INCLUDE_DIR)
mark_as_advanced(NCCL_LIBRARY NCCL_INCLUDE_DIR)

if(NCCL_FOUND AND NOT TARGET NCCL::nccl)
  add_library(NCCL::nccl UNKNOWN IMPORTED)
  set_target_properties(NCCL::nccl PROPERTIES
    IMPORTED_LOCATION ${NCCL_LIBRARY}
    INTERFACE_INCLUDE_DIRECTORIES ${NCCL_INCLUDE_DIR})
endif()
