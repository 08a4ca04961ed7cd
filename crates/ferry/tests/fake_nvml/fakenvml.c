/*
 * A stand-in for NVIDIA's libnvidia-ml.so (NVML), for tests on machines without an NVIDIA driver.
 *
 * tests/nvml.rs compiles this into a file named libnvidia-ml.so.1 and points the agent at it with `nvml_library`,
 * so the agent loads it through the real nvml-wrapper crate (0.12), exactly as it would load the driver's library.
 * It exports the calls nvml-wrapper makes for the agent's GPU detection and sampling (crates/ferry-agent/src/
 * resources.rs) and nothing more; any other NVML call fails in nvml-wrapper with FailedToLoadSymbol, not a crash.
 *
 * It reports two "Fake H100 80GB" GPUs with 80 GiB each, 20 GiB of it in use, busy 87% and 13%, at 55 C and
 * 312000 mW. The signatures and the nvmlMemory_v2_t and nvmlProcessUtilizationSample_t layouts follow nvml.h.
 *
 * Per-process figures (nvmlDeviceGetComputeRunningProcesses_v3, nvmlDeviceGetProcessUtilization) come from the
 * file `fake_nvml_processes` next to the library itself, read at every call, one process a line:
 * `<device index> <pid> <used memory bytes> <sm utilisation %>`. Without the file no process uses a GPU. Keeping
 * the file beside the library (found with dladdr) lets tests that run at once each have their own.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
};

typedef struct fake_device {
    unsigned int index;
    unsigned int utilization;
} *nvmlDevice_t;

typedef struct {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

/* nvmlProcessInfo_v2_t, which nvmlDeviceGetComputeRunningProcesses_v3 fills. */
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;

typedef struct {
    unsigned int pid;
    unsigned long long timeStamp;
    unsigned int smUtil;
    unsigned int memUtil;
    unsigned int encUtil;
    unsigned int decUtil;
} nvmlProcessUtilizationSample_t;

/* NVML_STRUCT_VERSION(Memory, 2) from nvml.h; nvml-wrapper 0.12 sets the same value before the call. */
#define NVML_MEMORY_V2 ((unsigned int)(sizeof(nvmlMemory_v2_t) | (2u << 24)))
#define NVML_TEMPERATURE_GPU 0
#define GIB (1024ULL * 1024ULL * 1024ULL)
#define DEVICE_COUNT 2u
#define PROCESSES_MAX 64u

/* The second GPU's utilisation; a test builds with -DFAKE_GPU1_PERCENT=5 to have an idle GPU. */
#ifndef FAKE_GPU1_PERCENT
#define FAKE_GPU1_PERCENT 13
#endif

static struct fake_device devices[DEVICE_COUNT] = {{0, 87}, {1, FAKE_GPU1_PERCENT}};
static int initialized = 0;

static int valid(nvmlDevice_t device) {
    return initialized && device != NULL && device >= devices && device < devices + DEVICE_COUNT;
}

static nvmlReturn_t copy_string(const char *value, char *out, unsigned int length) {
    if (out == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(value) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(out, value);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void) {
    initialized = 1;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlShutdown(void) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    initialized = 0;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument Version Mismatch";
    default: return "Unknown Error";
    }
}

/* nvml-wrapper reads the driver version during init to choose its field-id numbering. */
nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    return copy_string("550.54.15", version, length);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *count = DEVICE_COUNT;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (index >= DEVICE_COUNT || device == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &devices[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    if (!valid(device)) return NVML_ERROR_INVALID_ARGUMENT;
    return copy_string("Fake H100 80GB", name, length);
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    char value[64];
    if (!valid(device)) return NVML_ERROR_INVALID_ARGUMENT;
    snprintf(value, sizeof value, "GPU-fa4e0000-0000-4000-8000-00000000000%u", device->index);
    return copy_string(value, uuid, length);
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    if (!valid(device) || memory == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    /* As the real library does: a caller built against another layout is refused, not written past. */
    if (memory->version != NVML_MEMORY_V2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    memory->total = 80 * GIB;
    memory->reserved = GIB / 2;
    memory->used = 20 * GIB;
    memory->free = memory->total - memory->reserved - memory->used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization) {
    if (!valid(device) || utilization == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    utilization->gpu = device->utilization;
    utilization->memory = 25;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensor, unsigned int *temperature) {
    if (!valid(device) || temperature == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (sensor != NVML_TEMPERATURE_GPU) return NVML_ERROR_NOT_SUPPORTED;
    *temperature = 55;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *milliwatts) {
    if (!valid(device) || milliwatts == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *milliwatts = 312000;
    return NVML_SUCCESS;
}

/* One process of the FAKE_NVML_PROCESSES file. */
struct fake_process {
    unsigned int pid;
    unsigned long long memory;
    unsigned int sm;
};

/* Reads the processes on `device` from the file beside this library into `out`; returns how many. */
static unsigned int read_processes(nvmlDevice_t device, struct fake_process *out) {
    char path[4096];
    const char *slash;
    Dl_info self;
    unsigned int count = 0, index, pid, sm;
    unsigned long long memory;
    FILE *file;
    if (dladdr((void *)read_processes, &self) == 0 || self.dli_fname == NULL) return 0;
    slash = strrchr(self.dli_fname, '/');
    if (slash == NULL) return 0;
    snprintf(path, sizeof path, "%.*s/fake_nvml_processes", (int)(slash - self.dli_fname), self.dli_fname);
    if ((file = fopen(path, "r")) == NULL) return 0;
    while (count < PROCESSES_MAX && fscanf(file, "%u %u %llu %u", &index, &pid, &memory, &sm) == 4) {
        if (index != device->index) continue;
        out[count].pid = pid;
        out[count].memory = memory;
        out[count].sm = sm;
        count++;
    }
    fclose(file);
    return count;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                     nvmlProcessInfo_t *infos) {
    struct fake_process processes[PROCESSES_MAX];
    unsigned int found, i;
    if (!valid(device) || count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    found = read_processes(device, processes);
    /* As the real library does: a buffer too small (or none) gets the count and INSUFFICIENT_SIZE. */
    if (infos == NULL || *count < found) {
        *count = found;
        return found == 0 ? NVML_SUCCESS : NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (i = 0; i < found; i++) {
        infos[i].pid = processes[i].pid;
        infos[i].usedGpuMemory = processes[i].memory;
        infos[i].gpuInstanceId = 0xFFFFFFFFu;
        infos[i].computeInstanceId = 0xFFFFFFFFu;
    }
    *count = found;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t device, nvmlProcessUtilizationSample_t *samples,
                                             unsigned int *count, unsigned long long last_seen) {
    struct fake_process processes[PROCESSES_MAX];
    unsigned int found, i;
    (void)last_seen;
    if (!valid(device) || count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    found = read_processes(device, processes);
    /* The real library says NOT_FOUND when no process was sampled since `last_seen`. */
    if (found == 0) return NVML_ERROR_NOT_FOUND;
    if (samples == NULL || *count < found) {
        *count = found;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (i = 0; i < found; i++) {
        memset(&samples[i], 0, sizeof samples[i]);
        samples[i].pid = processes[i].pid;
        samples[i].timeStamp = last_seen + 1;
        samples[i].smUtil = processes[i].sm;
    }
    *count = found;
    return NVML_SUCCESS;
}
