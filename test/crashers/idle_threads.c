// idle_threads: link into any crasher to give it 4 idle threads from before main, so its core dump has threads that wait in the kernel while another dumps (multi-threaded services crash like that).
#include <pthread.h>
#include <unistd.h>

static void *idle(void *arg) {
  for (;;)
    pause();
  return arg;
}

__attribute__((constructor)) static void start_idle_threads(void) {
  pthread_t t;
  for (int i = 0; i < 4; i++)
    pthread_create(&t, 0, idle, 0);
}
