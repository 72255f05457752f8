# Install rules, the CMake package a C++ frontend uses (find_package(epd) -> epd::client) and
# CPack (.deb and .tgz). Included last from the top-level CMakeLists.txt.
#
#   cmake --install build --prefix /usr/local        # or: cd build && cpack -G DEB
#
# Layout (relative to the prefix): bin/epd (RPATH $ORIGIN/../<libdir>), the client library,
# headers and package files, share/epd/epd.toml (the default config), lib/systemd/system/
# epd.service (ExecStart at this prefix), lib/sysusers.d/epd.conf, share/doc/epd/README.md.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

option(EPD_BUNDLE_RUNTIME_LIBS
  "Copy the shared libraries epd needs (gRPC, protobuf, spdlog, ...) into the install's libdir, \
so a tarball runs on a node without them" OFF)

# ---- daemon ----
set_target_properties(epd PROPERTIES INSTALL_RPATH "$ORIGIN/../${CMAKE_INSTALL_LIBDIR}")
# DT_RPATH, not RUNPATH: it also serves the libraries' own dependencies (libgrpc++ needs
# libgrpc, ...), so a bundled tree resolves entirely from its libdir. NCCL is never bundled,
# so LD_LIBRARY_PATH still chooses it.
target_link_options(epd PRIVATE "LINKER:--disable-new-dtags")
if(EPD_BUNDLE_RUNTIME_LIBS)
  install(TARGETS epd RUNTIME_DEPENDENCY_SET epd_runtime_libs COMPONENT daemon)
  # The node supplies glibc, the C++ runtime, the GPU driver and NCCL (matching its driver).
  install(RUNTIME_DEPENDENCY_SET epd_runtime_libs COMPONENT daemon
    PRE_EXCLUDE_REGEXES "ld-linux" "libc\\.so" "libm\\.so" "libdl\\.so" "libpthread\\.so"
      "librt\\.so" "libstdc\\+\\+\\.so" "libgcc_s\\.so" "libcuda\\.so" "libnvidia-" "libnccl\\.so"
    POST_EXCLUDE_REGEXES "^/lib64/ld-linux"
    DIRECTORIES /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE} /lib/${CMAKE_LIBRARY_ARCHITECTURE})
else()
  install(TARGETS epd COMPONENT daemon)
endif()
install(FILES deploy/epd.toml DESTINATION ${CMAKE_INSTALL_DATADIR}/epd COMPONENT daemon)
install(FILES deploy/sysusers.d/epd.conf DESTINATION lib/sysusers.d COMPONENT daemon)
install(FILES README.md DESTINATION ${CMAKE_INSTALL_DOCDIR} COMPONENT daemon)
# The unit's ExecStart names the installed binary: rewritten at install time, so a package
# (prefix /usr) and `cmake --install --prefix X` each get their own path.
install(CODE "
  file(READ \"${CMAKE_SOURCE_DIR}/deploy/epd.service\" unit)
  string(REPLACE \"ExecStart=/usr/bin/epd \" \"ExecStart=\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_BINDIR}/epd \" unit \"\${unit}\")
  file(WRITE \"${CMAKE_BINARY_DIR}/install/epd.service\" \"\${unit}\")
  file(INSTALL \"${CMAKE_BINARY_DIR}/install/epd.service\"
       DESTINATION \"\${CMAKE_INSTALL_PREFIX}/lib/systemd/system\")
" COMPONENT daemon)

# ---- client library: find_package(epd) -> epd::client ----
# The in-tree include paths are build-only; installed headers live under includedir.
set(epd_exported_libs epd_client epd_common epd_common_grpc epd_proto)
if(TARGET epd_common_cuda)
  list(APPEND epd_exported_libs epd_common_cuda)
endif()
foreach(target ${epd_exported_libs})
  get_target_property(dirs ${target} INTERFACE_INCLUDE_DIRECTORIES)
  set(exported_dirs "$<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>")
  if(dirs)
    foreach(dir IN LISTS dirs)
      if(dir MATCHES "^(${CMAKE_SOURCE_DIR}|${CMAKE_BINARY_DIR})")
        list(APPEND exported_dirs "$<BUILD_INTERFACE:${dir}>")
      else()
        list(APPEND exported_dirs "${dir}")
      endif()
    endforeach()
  endif()
  set_target_properties(${target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${exported_dirs}")
endforeach()
set_target_properties(epd_client PROPERTIES EXPORT_NAME client)
set_target_properties(epd_common PROPERTIES EXPORT_NAME common)
set_target_properties(epd_proto PROPERTIES EXPORT_NAME proto)
set_target_properties(epd_common_grpc PROPERTIES EXPORT_NAME common_grpc)
if(TARGET epd_common_cuda)
  set_target_properties(epd_common_cuda PROPERTIES EXPORT_NAME common_cuda)
endif()
install(TARGETS ${epd_exported_libs} EXPORT epdTargets COMPONENT client
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(DIRECTORY client/epd DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/client COMPONENT client
  FILES_MATCHING PATTERN "*.h")
install(FILES common/status.h common/dtype.h common/fence_page.h common/limits.h common/align.h
  common/grpc_status.h common/proto_dtype.h common/cuda_check.h common/cuda_driver.h
  common/fp8.h
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/common COMPONENT client)
install(DIRECTORY ${CMAKE_BINARY_DIR}/gen/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT client
  FILES_MATCHING PATTERN "*.pb.h")
install(EXPORT epdTargets NAMESPACE epd:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/epd
  COMPONENT client)
set(EPD_PACKAGE_WITH_CUDA ${EPD_WITH_CUDA})
configure_package_config_file(cmake/epdConfig.cmake.in ${CMAKE_BINARY_DIR}/install/epdConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/epd)
write_basic_package_version_file(${CMAKE_BINARY_DIR}/install/epdConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/install/epdConfig.cmake
  ${CMAKE_BINARY_DIR}/install/epdConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/epd COMPONENT client)

# ---- packages ----
set(CPACK_PACKAGE_NAME epd)
set(CPACK_PACKAGE_VENDOR "epd")
set(CPACK_PACKAGE_CONTACT "epd maintainers <epd@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "expert-parallel MoE dispatch/combine node daemon")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_GENERATOR "DEB;TGZ")
set(CPACK_STRIP_FILES ON)  # debug info stays in the build tree
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION misc)
# Depends: computed from the binary's shared libraries (dpkg-shlibdeps). NCCL is not a
# Debian package: the GPU node provides it (as for deploy/bundle.sh).
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "systemd")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${CMAKE_SOURCE_DIR}/deploy/debian/postinst)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_ARCHIVE_FILE_NAME "epd-${PROJECT_VERSION}-${CMAKE_SYSTEM_PROCESSOR}")
include(CPack)
