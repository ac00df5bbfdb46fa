// Crash: a Java program that writes through a null pointer with
// sun.misc.Unsafe; the JVM catches the SIGSEGV, writes hs_err_pid<pid>.log
// to its working directory and aborts.
import java.lang.reflect.Field;
import sun.misc.Unsafe;

public class Crash {
    static void store(Unsafe u) {
        u.putLong(0L, 42L);
    }

    public static void main(String[] args) throws Exception {
        Field f = Unsafe.class.getDeclaredField("theUnsafe");
        f.setAccessible(true);
        store((Unsafe) f.get(null));
    }
}
