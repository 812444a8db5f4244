/*
 * The `flannelette` executable of the frozen build: starts the bundled interpreter on the
 * lean shim (cni_plugin/shim.py) and nothing else.
 *
 * Why not PyInstaller's bootloader, as for flannelette-full and flanneletted: on Linux a
 * onedir bootloader re-execs itself, then loads encodings from base_library.zip through
 * zipimport and runs its own bootstrap modules. For a process that lives ~10 ms per CNI
 * call that doubled the start-up (docs/performance.md#the-c-launcher). This launcher
 * finds libpython through its RUNPATH ($ORIGIN/_internal), imports from two directories
 * only, and runs `flannelette_shim.main()`:
 *   <onedir>/_internal/lean         the encodings package and flannelette_shim, as .pyc (build.py)
 *   <onedir>/<LIB_DYNLOAD>          the stdlib extension modules (_json, _socket)
 * The interpreter runs isolated (no environment variables, no site, no user site), in
 * UTF-8 mode, so the node's locale and PYTHON* variables cannot change what runs.
 * packaging/build.py compiles it with -DLIB_DYNLOAD="..." and checks the result.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>
#include <string.h>
#include <unistd.h>

#ifndef LIB_DYNLOAD
#error "build with -DLIB_DYNLOAD=\"<path of lib-dynload relative to the onedir>\""
#endif

/* A CNI error on stdout, the only thing a runtime reads; message must need no escaping. */
static int fail(const char *msg)
{
    static const char head[] = "{\"cniVersion\":\"1.1.0\",\"code\":999,\"msg\":\"flannelette cannot start: ";
    static const char tail[] = "\"}\n";
    (void)(write(1, head, sizeof head - 1) < 0 || write(1, msg, strlen(msg)) < 0
           || write(1, tail, sizeof tail - 1) < 0);
    return 1;
}

static int add_path(PyConfig *config, const char *dir, const char *sub)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", dir, sub) >= (int)sizeof path)
        return -1;
    wchar_t *wide = Py_DecodeLocale(path, NULL);
    if (wide == NULL)
        return -1;
    PyStatus status = PyWideStringList_Append(&config->module_search_paths, wide);
    PyMem_RawFree(wide);
    return PyStatus_Exception(status) ? -1 : 0;
}

int main(int argc, char **argv)
{
    /* The onedir is where the real file lives: runtimes exec it through a symlink. */
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0)
        return fail("cannot read /proc/self/exe");
    exe[len] = '\0';
    char onedir[PATH_MAX];
    memcpy(onedir, exe, (size_t)len + 1);
    char *slash = strrchr(onedir, '/');
    if (slash == NULL)
        return fail("cannot tell the install directory");
    *slash = '\0';

    PyPreConfig preconfig;
    PyPreConfig_InitIsolatedConfig(&preconfig);
    preconfig.utf8_mode = 1;
    if (PyStatus_Exception(Py_PreInitialize(&preconfig)))
        return fail("interpreter pre-initialisation failed");

    PyConfig config;
    PyConfig_InitIsolatedConfig(&config);
    config.site_import = 0;
    config.write_bytecode = 0;
    config.pathconfig_warnings = 0;
    config.module_search_paths_set = 1;
    int ok = add_path(&config, onedir, "_internal/lean") == 0
             && add_path(&config, onedir, LIB_DYNLOAD) == 0
             && !PyStatus_Exception(PyConfig_SetBytesString(&config, &config.home, onedir))
             && !PyStatus_Exception(PyConfig_SetBytesString(&config, &config.executable, exe))
             && !PyStatus_Exception(PyConfig_SetBytesArgv(&config, argc, argv));
    PyStatus status = ok ? Py_InitializeFromConfig(&config) : PyStatus_Error("config");
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status))
        return fail("interpreter initialisation failed");
    /* sys.frozen: the shim hands slow paths to flannelette-full next to sys.executable. */
    return PyRun_SimpleString("import sys\nsys.frozen = True\nimport flannelette_shim\nflannelette_shim.main()\n") ? 1 : 0;
}
